"""A deterministic known-answer world of simple shape scenes, for training and checking tiny BLIP models.

scenes.py draws and renders scenes; captions.py describes them (and corrupts descriptions the way web alt-text is
wrong); questions.py asks VQA questions, makes NLVR2 statements and referring expressions; build.py writes web
shards, a clean annotated set and test sets in the official formats (`python -m shapeworld DIR`).
"""
