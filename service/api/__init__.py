"""The HTTP surface: the app and its routes, reading requests, answering them."""
