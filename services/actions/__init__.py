"""The enforcement-action contract, shared by the enforcer and the monitor.

It owns everything both sides of `safeguards.actions.<region>` must agree on:

- `keys`: the record key of an action's target (`action_key`, `parse_key`);
- `records`: the signed record format (HMAC-SHA256 with a regional key ring, key id
  in a header) and its verification;
- `projection`: the applied state, in memory, answering the request path's lookups;
- `consumer`: the Kafka adapter that reads the topic, verifies every record and feeds
  the projection (and keeps its local snapshot, `snapshot`);
- `sink`: the one `ActionSink` port and its Kafka adapter (acks=all, signing);
- `admin`: the admin domain on plain types (issue, list, revoke; authorise by role;
  audit) that the enforcer's gRPC admin API and the monitor's console both call;
- `settings`: the key-ring flags both services take.

Topic names live in `services.common.topics`. Services import `services.common`, this
package and the generated protos, never each other.
"""
