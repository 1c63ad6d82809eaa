"""The bench role: a continuous, version-aware benchmark of the fleet, recorded in SQLite.

`targets` reads what a target is running, `scenarios` measures one request or a
burst, `sweep` decides what still needs measuring for each build, `store` keeps
the rows, `report` and `api` show them.
"""
