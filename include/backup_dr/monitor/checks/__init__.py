"""One module per compliance check: its rule (plain values in, a status out, pure) and the
rows it gives from the facts. `compliance.evaluate` runs them all in table order."""
