"""How the parts are started: the `artgen` command, a local Redis, Flower, and the whole stack.

It sits above `api/`, `worker/` and `shared/` and imports the first two only when a command runs, so each
Docker image (which holds one side) still runs its own commands, and neither side knows this package.
"""
