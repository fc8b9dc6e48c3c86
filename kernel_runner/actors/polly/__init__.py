"""The vendor.aws_polly delegate: the actor and its worker thread (boto3)."""
