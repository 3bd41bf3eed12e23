"""Where S3 (and SQS) are reached, and as whom: the S3 image store's connection.

The fields are those of dagster-aws's `S3Resource` that this project uses, under the same names and defaults, so
a configuration written for `S3Resource` still applies. It is our own resource, not dagster-aws's, because the
stores build their boto3 clients themselves anyway (adaptive retries, short timeouts, a big connection pool), and
importing dagster-aws costs every run process about a second of CPU before any image: its package imports its
Secrets Manager component, which imports `dagster._core.test_utils` (issue #38: a run's fixed cost)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field


class S3Connection(dg.ConfigurableResource):
    endpoint_url: str | None = Field(default=None, description="A custom endpoint (MinIO, R2, a local server).")
    region_name: str | None = Field(default=None, description="The region of the boto3 session.")
    profile_name: str | None = Field(default=None, description="A named profile of the AWS config files.")
    aws_access_key_id: str | None = Field(default=None, description="Unset: boto3 finds credentials itself.")
    aws_secret_access_key: str | None = Field(default=None, description="Unset: boto3 finds credentials itself.")
    aws_session_token: str | None = Field(default=None, description="For temporary credentials.")
    use_ssl: bool = Field(default=True, description="Whether to use TLS.")
    verify: bool | None = Field(default=True, description="Whether to verify TLS certificates.")
    max_attempts: int = Field(default=5, description="botocore's attempts per request, the first included.")

    def client(self, service: str, config: Any) -> Any:
        """A boto3 client for `service` (s3, sqs) with this endpoint, region and credentials."""
        import boto3  # here, not at import: a run on a folder store never imports boto3

        session = boto3.session.Session(profile_name=self.profile_name, aws_access_key_id=self.aws_access_key_id,
                                        aws_secret_access_key=self.aws_secret_access_key,
                                        aws_session_token=self.aws_session_token)
        return session.client(service, endpoint_url=self.endpoint_url, region_name=self.region_name,
                              use_ssl=self.use_ssl, verify=self.verify, config=config)
