//! One speeddata-relay channel.
