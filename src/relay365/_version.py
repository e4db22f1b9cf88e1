"""relay365's version, in a module of its own so that the parts that print it (the Graph
client's User-Agent, the HTTP API's OpenAPI document) need not import the package root,
which sits above them all."""

__version__ = "0.1.0"
