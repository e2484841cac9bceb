"""Cut a model by a plan into standalone stage models and a manifest."""
