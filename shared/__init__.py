"""Code that the API and the workers both use: settings, job schema, Redis keys, prompt syntax."""
