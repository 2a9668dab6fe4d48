"""Training of the `toyworld` demo models: a small VQGAN and CLIP trained on a procedural world of shapes.

world.py draws the pictures and captions, data.py renders them as tensors, train_vqgan.py and
train_clip.py train the two networks, and `python -m toyworld.train` does both and prints the evaluation.
Not part of the installed packages or the images: the worker ships only what the preset loads
(`worker/toyworld/`: spec.py and the weights it pins).
"""
