//! An Intercom-compatible REST API 2.x sandbox: stateful, strict, and able to misbehave on purpose.
