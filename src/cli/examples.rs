//! The examples that end each command's long help (`--help`; `-h` stays short). One or two
//! per command, copied from the README's walkthrough where it has them, so they are runnable.

pub const ROOT: &str = "Examples:
  # the console on the database ($HOOKOPS_DB or --db), looking without touching
  hookops --db /srv/hookops.db --read-only
  # a first look: the built-in demo, headless
  hookops demo --no-tui";

pub const WORKFLOW_APPLY: &str = "Examples:
  hookops workflow apply demo/workflow.toml
  # validate only, the file from a pipe; move the items of a removed stage
  render-workflow | hookops workflow apply - --check
  hookops workflow apply flow.toml --move old-qa=qa";

pub const WORKFLOW_LIST: &str = "Examples:
  hookops workflow list
  hookops workflow list --json";

pub const WORKFLOW_SHOW: &str = "Examples:
  hookops workflow show defects
  hookops workflow show defects --json | jq '.stage_list[] | {id, items}'";

pub const ITEM_IMPORT: &str = "Examples:
  hookops item import demo/items.jsonl --workflow defects
  # from a pipe (a V7 export is one Darwin JSON document per line)
  hookops item import - --workflow defects < items.jsonl";

pub const ITEM_LIST: &str = "Examples:
  hookops item list --workflow defects --stage dataset --limit 5
  hookops item list --state failed --search weld --json";

pub const ITEM_SHOW: &str = "Examples:
  hookops item show acme-weld-0001
  hookops item show acme-weld-0001 --json | jq .history";

pub const ITEM_ADVANCE: &str = "Examples:
  hookops item advance acme-weld-0001
  hookops item advance acme-weld-0001 --outcome approve --expect-stage review";

pub const ASSIGN: &str = "Examples:
  # the 20 items that have waited longest in the dataset stage
  hookops assign --workflow defects --stage validate --from-stage dataset --limit 20
  # named items, only if they are still where the script saw them
  hookops assign --workflow defects --stage qa acme-weld-0001 acme-weld-0002 --expect-stage review";

pub const AUDIT: &str = "Examples:
  hookops audit
  # who re-fired item acme-weld-0001, when, and from where
  hookops audit --item acme-weld-0001 --action refire
  hookops audit --operator ana --since 2h --json
  # the ids one action touched
  hookops audit show 42";

pub const AUDIT_SHOW: &str = "Examples:
  hookops audit show 42
  hookops audit show 42 --json | jq -r '.ids[]'";

pub const DELIVERIES: &str = "Examples:
  hookops deliveries --state failed --workflow defects
  # the 5xx failures and the timeouts of an outage window
  hookops deliveries --state failed --status 5xx --error-kind timeout --since 2026-12-07T02:10:00Z --until 2026-12-07T02:40:00Z
  # 3,000 failures in a few lines: one per cause
  hookops deliveries --group-by cause --workflow defects
  # every new attempt as JSON Lines, until Ctrl-C
  hookops deliveries --follow --workflow defects --json";

pub const DELIVERIES_EXPORT: &str = "Examples:
  hookops deliveries export --state failed --status 503 --output failed-503.jsonl";

pub const DELIVERY_SHOW: &str = "Examples:
  hookops delivery show msg_01jd0000000000000000000000
  hookops delivery show msg_01jd0000000000000000000000 --json | jq '.attempt_log[-1]'";

pub const DELIVERY_CANCEL: &str = "Examples:
  hookops delivery cancel msg_01jd0000000000000000000000
  # an item's latest delivery (in a stage, with --workflow)
  hookops delivery cancel --item acme-weld-0001 --workflow defects --stage export
  hookops delivery cancel --state retry_scheduled --workflow defects --stage qa --yes";

pub const REFIRE: &str = "Examples:
  # after fixing the receiver: every failed delivery of a workflow
  hookops refire --failed --workflow defects --yes
  # only the 5xx and timeout failures of the outage, counted first
  hookops refire --failed --workflow defects --stage export --status 5xx --error-kind timeout --since 40m --until 10m --dry-run
  # re-send one delivery's stored bytes to debug a receiver (the item stays)
  hookops refire --replay msg_01jd0000000000000000000000";

pub const TEST_WEBHOOK: &str = "Examples:
  hookops test-webhook --workflow defects --stage export
  # a real item's document to the stage of its latest delivery (the item does not move)
  hookops test-webhook --item acme-weld-0001
  # a delivery's stage, with its item's document as it is now
  hookops test-webhook msg_01jd0000000000000000000000";

pub const STAGE_PAUSE: &str = "Examples:
  hookops stage pause --workflow defects export";

pub const STAGE_RESUME: &str = "Examples:
  hookops stage resume --workflow defects export";

pub const SERVE: &str = "Examples:
  hookops serve --concurrency 128 --retain 30d
  # with the HTTP API on 127.0.0.1:8787 (tokens: lines of name:token)
  hookops serve --api --api-tokens /etc/hookops/tokens";

pub const RECEIVER: &str = "Examples:
  hookops receiver --port 9000 --script '/validate=fail-first-2,/export=500,*=ok'
  hookops receiver --port 0 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw --record seen.jsonl";

pub const DEMO: &str = "Examples:
  hookops demo
  hookops demo --no-tui --timeout 2m";

pub const PRUNE: &str = "Examples:
  hookops prune --older-than 30d --dry-run
  hookops prune --older-than 30d --audit-older-than 1y";

pub const BACKUP: &str = "Examples:
  hookops backup /backups/hookops-$(date +%F).db";

pub const DB_COPY: &str = "Examples:
  hookops db copy ~/.local/share/hookops/hookops.db postgres://hookops@db.internal/hookops
  hookops db copy postgres://hookops@db.internal/hookops /tmp/investigate.db";

pub const CHECK: &str = "Examples:
  hookops check
  hookops check --repair";

pub const COMPLETIONS: &str = "Examples:
  hookops completions bash > ~/.local/share/bash-completion/completions/hookops
  hookops completions fish > ~/.config/fish/completions/hookops.fish";

pub const MAN: &str = "Examples:
  hookops man > ~/.local/share/man/man1/hookops.1";

pub const POLICY_SHOW: &str = "Examples:
  hookops policy show";

pub const POLICY_SET: &str = "Examples:
  hookops policy set deny_private_targets true
  hookops policy set max_body_bytes 16777216";
