"""The bodies of the commands: train.py, predict.py, evaluate.py and export.py call these."""
