"""The sweep report: figures that show what a sweep learned, in one offline HTML file and PNGs."""

from finesweep.report.page import HTML_NAME, Report, build, publish

__all__ = ["HTML_NAME", "Report", "build", "publish"]
