"""Production of ntuples on a batch system (LSF or local processes).

Modules: ``config`` (the YAML config model), ``plan`` (jobs from samples),
``batch`` (the backend interface), ``lsf`` and ``local`` (the backends),
``ledger`` (SQLite record of submissions), ``verify`` (output checks),
``runner`` (the submit and poll loop) and ``steering`` (the basf2 script).
"""
