"""Small utilities every folder may import (the one exception to the one-way imports): errors for
bad input, reading named YAML files, the cache folder, atomic writes. It imports nothing else of
edgesearch, so it sits below `spaces/` and `reports/` in the import order."""
