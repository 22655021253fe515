"""Accuracy of a trained model on a dataset split: metrics and the evaluate.py pipeline."""
