"""The fault-injection ``sitecustomize`` that the fault tests put on a subprocess path."""
