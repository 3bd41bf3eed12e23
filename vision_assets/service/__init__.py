"""The search service: the catalogue over HTTP for applications (`vision-assets serve`), the generalist loaded once
and the index held open between queries. Plain Python over `vision/`; no Dagster."""
