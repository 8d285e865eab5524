"""From YAML to the compiled `Policy`: load, check (schema, semantics), substitute, compile."""
