"""Report exports: the rows of each report (queries), read through a server-side cursor."""
