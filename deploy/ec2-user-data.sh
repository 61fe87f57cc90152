#!/usr/bin/env bash
# EC2 user data for an executor instance: installs sluice from a release
# tarball in S3 (binaries + deploy/), fetches the cluster's TLS files,
# points the executor at the scheduler and starts it. Set SCHEDULER_HOST,
# RELEASE_URL and TLS_URL (a launch template substitutes them); the instance
# role gives S3/DynamoDB access (deploy/iam-policy.json) and read access to
# RELEASE_URL and TLS_URL.
#
# TLS_URL holds ca.pem and one certificate for every executor,
# executor.pem/executor.key, made for the instances' private DNS names
# (`sluice certs issue tls executor --host '*.ec2.internal'`, or
# '*.REGION.compute.internal' outside us-east-1): each executor advertises
# its private DNS name, so peers verify it without a certificate per host.
# Keep that prefix encrypted (SSE-KMS) and readable by the fleet's role only.
set -euo pipefail
SCHEDULER_HOST="${SCHEDULER_HOST:-scheduler.internal}"
RELEASE_URL="${RELEASE_URL:-s3://my-artifacts/sluice/sluice-linux-x86_64.tar.gz}"
TLS_URL="${TLS_URL:-s3://my-artifacts/sluice/tls}"
REGION="$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
  | xargs -I{} curl -sf -H 'X-aws-ec2-metadata-token: {}' http://169.254.169.254/latest/meta-data/placement/region)"
work="$(mktemp -d)"
aws s3 cp "$RELEASE_URL" "$work/sluice.tar.gz" --region "$REGION"
tar -xzf "$work/sluice.tar.gz" -C "$work"
"$work/deploy/install.sh" --bin-dir "$work/bin"
private_name="$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
  | xargs -I{} curl -sf -H 'X-aws-ec2-metadata-token: {}' http://169.254.169.254/latest/meta-data/local-hostname)"
install -d -m 0750 -o sluice -g sluice /etc/sluice/tls
aws s3 cp "$TLS_URL/ca.pem" /etc/sluice/tls/ca.pem --region "$REGION"
aws s3 cp "$TLS_URL/executor.pem" /etc/sluice/tls/node.pem --region "$REGION"
aws s3 cp "$TLS_URL/executor.key" /etc/sluice/tls/node.key --region "$REGION"
chown sluice:sluice /etc/sluice/tls/*
chmod 0600 /etc/sluice/tls/node.key
sed -i "s/^scheduler-host = .*/scheduler-host = \"$SCHEDULER_HOST\"/" /etc/sluice/executor.toml
grep -q '^external-host' /etc/sluice/executor.toml \
  || echo "external-host = \"$private_name\"" >> /etc/sluice/executor.toml
echo "AWS_REGION=$REGION" > /etc/sluice/environment
systemctl daemon-reload
systemctl enable --now sluice-executor
