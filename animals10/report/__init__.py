"""The comparison report: its pictures (plots), its rendering (document), what it says (contents) and
writing it (writer)."""

from animals10.report.writer import Report, write_report

__all__ = ["Report", "write_report"]
