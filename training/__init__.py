"""homerec data management and experimentation: world, features, training sets, rankers."""
