"""One module per tab of the app: module-level handlers, and a ``build`` that lays the tab out."""
