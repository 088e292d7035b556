"""gnr650: configuration-driven experiments on how vision networks learn and transfer."""
