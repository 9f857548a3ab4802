"""Applications built on the library: the 15-minute demo and synthetic training data (``synth``).

They sit above training, evaluation and the pipelines, and only the command line imports them.
"""
