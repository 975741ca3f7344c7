# Terraform: trust the Lanyard issuer in an AWS account and let exactly one
# workload assume a role. `lanyard-server federation aws` prints the same as CLI commands.
variable "issuer_host" {
  description = "The issuer URL without https://, e.g. oidc.example.org"
  type        = string
}

variable "spiffe_id" {
  description = "The workload's SPIFFE ID, e.g. spiffe://example.org/billing/api"
  type        = string
}

data "tls_certificate" "issuer" {
  url = "https://${var.issuer_host}"
}

resource "aws_iam_openid_connect_provider" "lanyard" {
  url             = "https://${var.issuer_host}"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = [data.tls_certificate.issuer.certificates[0].sha1_fingerprint]
}

data "aws_iam_policy_document" "trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.lanyard.arn]
    }
    # Pin both: the audience (no other relying party's tokens) and the exact
    # subject (no other workload of the trust domain).
    condition {
      test     = "StringEquals"
      variable = "${var.issuer_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.issuer_host}:sub"
      values   = [var.spiffe_id]
    }
  }
}

resource "aws_iam_role" "workload" {
  name                 = "billing-api"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = 3600
}
