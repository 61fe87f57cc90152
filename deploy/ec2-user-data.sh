#!/usr/bin/env bash
# EC2 user data for an executor instance: installs sluice from a release
# tarball in S3 (binaries + deploy/), points the executor at the scheduler
# and starts it. Set SCHEDULER_HOST and RELEASE_URL (a launch template
# substitutes them); the instance role gives S3/DynamoDB access
# (deploy/iam-policy.json) and read access to RELEASE_URL.
set -euo pipefail
SCHEDULER_HOST="${SCHEDULER_HOST:-scheduler.internal}"
RELEASE_URL="${RELEASE_URL:-s3://my-artifacts/sluice/sluice-linux-x86_64.tar.gz}"
REGION="$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
  | xargs -I{} curl -sf -H 'X-aws-ec2-metadata-token: {}' http://169.254.169.254/latest/meta-data/placement/region)"
work="$(mktemp -d)"
aws s3 cp "$RELEASE_URL" "$work/sluice.tar.gz" --region "$REGION"
tar -xzf "$work/sluice.tar.gz" -C "$work"
"$work/deploy/install.sh" --bin-dir "$work/bin"
private_ip="$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
  | xargs -I{} curl -sf -H 'X-aws-ec2-metadata-token: {}' http://169.254.169.254/latest/meta-data/local-ipv4)"
sed -i "s/^scheduler-host = .*/scheduler-host = \"$SCHEDULER_HOST\"/" /etc/sluice/executor.toml
grep -q '^external-host' /etc/sluice/executor.toml \
  || echo "external-host = \"$private_ip\"" >> /etc/sluice/executor.toml
echo "AWS_REGION=$REGION" > /etc/sluice/environment
systemctl daemon-reload
systemctl enable --now sluice-executor
