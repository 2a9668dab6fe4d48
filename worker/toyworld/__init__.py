"""The `toyworld` demo models: a small VQGAN and CLIP trained offline on a procedural world of shapes.

world.py draws the pictures and captions, train_vqgan.py / train_clip.py train the two networks,
`python -m worker.toyworld.train` does both and prints the evaluation; spec.py pins the shipped files.
"""
