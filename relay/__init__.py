"""s3-notify-relay: the S3 bucket-notification hop, made lossless, observable and replayable."""

__version__ = "0.1.0"
