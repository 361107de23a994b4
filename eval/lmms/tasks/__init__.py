"""Local lmms-eval tasks (YAML) and the functions their ``!function`` entries name.

The YAMLs read their data file relative to their own folder (lmms-eval 0.7.3 resolves relative
``data_files`` against the YAML's folder), so they are copied next to the data by
:func:`eval.lmms.runner.install_tasks`; the functions are referenced by absolute module path
(``eval.lmms.tasks.pope.process_results``) so the copies keep working anywhere.
"""
