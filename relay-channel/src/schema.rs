//! A channel's schema: its text as written, the compiled validator and the
//! single-object header, loaded from the file the channel names. The
//! orchestrator loads it the same way to check channel files.

use crate::config::{ChannelSpec, ConfigError, Encoding, Problem};
use crate::decimate::Decimator;
use crate::validate::Validator;

/// The schema of a channel: its text as written (for the archive header) and
/// the compiled validator.
pub struct ChannelSchema {
    pub text: String,
    pub validator: Validator,
    /// The single-object encoding header of this schema (`C3 01` and the
    /// CRC-64-AVRO fingerprint of its canonical form).
    pub single_object_header: [u8; 10],
    /// The decimated output's decimator, compiled for this schema.
    pub decimator: Option<Decimator>,
}

/// Reads, parses and compiles the channel's schema, and the decimator for
/// it; problems are configuration errors against the `schema` key, or
/// `decimated.keep_last` for a name that is not a field of the schema.
pub fn load(spec: &ChannelSpec) -> Result<ChannelSchema, ConfigError> {
    let err = |m: String| ConfigError {
        file: spec.file.clone(),
        problems: vec![Problem {
            key: "schema".into(),
            message: m,
        }],
    };
    let path = &spec.schema_path;
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    from_text(spec, text)
}

/// Like [`load`], with the schema's text given (not yet written to
/// `spec.schema_path`, which problems still name).
pub fn from_text(spec: &ChannelSpec, text: String) -> Result<ChannelSchema, ConfigError> {
    let err = |m: String| ConfigError {
        file: spec.file.clone(),
        problems: vec![Problem {
            key: "schema".into(),
            message: m,
        }],
    };
    let path = &spec.schema_path;
    let schema = apache_avro::Schema::parse_str(&text).map_err(|e| {
        err(format!(
            "{} is not a valid Avro schema: {e}",
            path.display()
        ))
    })?;
    let validator = Validator::new(&schema).map_err(|e| err(format!("{}: {e}", path.display())))?;
    use apache_avro::headers::HeaderBuilder as _;
    let header = apache_avro::headers::RabinFingerprintHeader::from_schema(&schema).build_header();
    let mut single_object_header = [0u8; 10];
    single_object_header.copy_from_slice(&header[..10]);
    let decimator = match &spec.decimated {
        Some(d) => {
            let prefix: &[u8] = match spec.receive.encoding {
                Encoding::SingleObject => &single_object_header,
                Encoding::Datum => &[],
            };
            let window = d.window.into();
            Some(
                Decimator::new(&schema, d.algorithm, window, &d.keep_last, prefix)
                    .map(|dec| dec.trusting_validated_input(spec.receive.validate))
                    .map_err(|m| ConfigError {
                        file: spec.file.clone(),
                        problems: vec![Problem {
                            key: "decimated.keep_last".into(),
                            message: m,
                        }],
                    })?,
            )
        }
        None => None,
    };
    Ok(ChannelSchema {
        text: text.trim().to_string(),
        validator,
        single_object_header,
        decimator,
    })
}
