"""The results table of a run store (see :mod:`qgen.results.table` for the columns).

Reading a store into a table needs pandas and pyarrow, not torch, so analysis and reports
built on it stay light.
"""

from qgen.results.table import TABLE_SUFFIXES, collect, read_table, summarize, write_table

__all__ = ["TABLE_SUFFIXES", "collect", "read_table", "summarize", "write_table"]
