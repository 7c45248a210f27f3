"""Evaluation: metrics (:mod:`slopekp.eval.metrics`) and evaluating a trained model on a data split
(:mod:`slopekp.eval.evaluate`)."""
