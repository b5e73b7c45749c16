"""Reports: tables, figures and the report writer."""
