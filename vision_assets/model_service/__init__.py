"""The model service (`vision-assets models serve`): the committee's models loaded once per device and kept busy by
every run, beside Dagster and the search service. server.py builds it on LitServe, api.py is its LitAPI, committee.py
answers a batch of requests on one device, metrics.py is what `/metrics` shows. Its clients are
vision/models/remote.py."""
