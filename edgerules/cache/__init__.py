"""The response cache: RFC 9111/5861 rules (`http`) on top of a Store (`response`)."""
