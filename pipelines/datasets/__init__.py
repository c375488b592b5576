"""Cohort builders: each writes a manifest (``manifest.parquet``) that stage one and stage two read.

``demo`` (synthetic, all six modalities), ``mmist`` (the MMIST ccRCC release), ``mimic`` (MIMIC-IV-MM, a
package of its own: sources, cohort, media, time series, variables, summary) and ``from_table`` (bring your own
table and a mapping file); ``prompts`` renders clinical prompts from table rows for the MMIST and from-table
builders.
"""
