"""bertforge: see what BERT pretraining does."""
