"""Models: the zoo, user models and edgecnn's model files."""
