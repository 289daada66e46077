"""LEVI model code shared by training and serving: encoders, head, features, artifact format."""
