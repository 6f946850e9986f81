"""Evaluations of a trained model. Import the submodule you need (imports stay lazy)."""
