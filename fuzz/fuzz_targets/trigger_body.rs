//! `trigger_body`: the HTTP trigger's body decoder (`POST /api/v1/workers/jobs/{id}/trigger`),
//! which reads a body as the job's payload, or as an envelope `{ "payload", "idempotencyKey",
//! "priority", "delay", ... }` that carries the payload with enqueue options.
//!
//! Input: the raw body (any bytes).
//!
//! Checked, beyond "no panic":
//! - A blank body is a `null` payload with default options.
//! - A body that is not JSON is a 400 `malformed_json`, and only such a body is.
//! - A JSON body that is not envelope-shaped (an object with `payload` and only envelope
//!   fields) is its own payload, with default options: it decodes to a payload, always.
//! - An envelope-shaped body decodes to its `payload` field and options, or is a 422
//!   `invalid_envelope`; nothing else.
//! - Integral floats within ±2^53 come out as integers, anywhere in the payload.
//! - What decodes, encoded again (as a bare payload, or as an envelope with its options),
//!   decodes to exactly the same payload and options (floats included: serde_json's
//!   `float_roundtrip`, turned on after this target found floats read one ULP off).
//! - The run's `-malloc_limit_mb` catches an allocation out of proportion to the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netscript_runtime::EnqueueOptions;
use netscript_runtime::fuzzing::parse_trigger_body;
use serde_json::Value;

const ENVELOPE_FIELDS: &[&str] =
    &["payload", "idempotencyKey", "concurrencyKey", "priority", "delay", "correlationId", "traceparent", "tracestate"];

fuzz_target!(|body: &[u8]| {
    let decoded = parse_trigger_body(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(decoded, Ok((Value::Null, EnqueueOptions::default())));
        return;
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        let error = decoded.expect_err("a body that is not JSON is refused");
        assert_eq!((error.status.as_u16(), error.code), (400, "malformed_json"), "{}", error.message);
        return;
    };
    let envelope_shaped = is_envelope_shaped(&json);
    let (payload, options) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            assert!(envelope_shaped, "a JSON body that is not an envelope is refused: {error:?}");
            assert_eq!((error.status.as_u16(), error.code), (422, "invalid_envelope"), "{}", error.message);
            return;
        }
    };
    assert_no_integral_floats(&payload);
    if envelope_shaped {
        assert!(
            same_number_for_number(&payload, &json["payload"]),
            "the payload is the envelope's `payload`: {payload} vs {}",
            json["payload"]
        );
        let mut again = serde_json::to_value(&options).expect("options serialize");
        let Value::Object(fields) = &mut again else { panic!("options serialize to an object: {again}") };
        fields.insert("payload".into(), payload.clone());
        let again = serde_json::to_vec(&again).expect("a Value serializes");
        let (again_payload, again_options) = parse_trigger_body(&again).expect("the envelope decodes again");
        assert_eq!(again_options, options, "the envelope's options round-trip");
        assert_eq!(again_payload, payload, "the envelope round-trips");
    } else {
        assert_eq!(options, EnqueueOptions::default());
        assert!(same_number_for_number(&payload, &json), "the body is the payload: {payload} vs {json}");
        let again = serde_json::to_vec(&payload).expect("a Value serializes");
        let (again_payload, again_options) = parse_trigger_body(&again).expect("the payload decodes again");
        assert_eq!(again_options, EnqueueOptions::default());
        assert_eq!(again_payload, payload, "the payload round-trips");
    }
});

/// What the decoder reads as an envelope: an object with `payload` and no other field.
fn is_envelope_shaped(json: &Value) -> bool {
    json.as_object()
        .is_some_and(|o| o.contains_key("payload") && o.keys().all(|k| ENVELOPE_FIELDS.contains(&k.as_str())))
}

/// No number that is an integral float within ±2^53 is left as a float.
fn assert_no_integral_floats(value: &Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                assert!(f.fract() != 0.0 || f.abs() > 9_007_199_254_740_992.0, "{n} was left a float");
            }
        }
        Value::Array(items) => items.iter().for_each(assert_no_integral_floats),
        Value::Object(fields) => fields.values().for_each(assert_no_integral_floats),
        _ => {}
    }
}

/// The same JSON, up to integral floats that became integers of the same value.
fn same_number_for_number(decoded: &Value, original: &Value) -> bool {
    match (decoded, original) {
        (Value::Number(d), Value::Number(o)) => d == o || (o.is_f64() && d.as_f64() == o.as_f64()),
        (Value::Array(d), Value::Array(o)) => {
            d.len() == o.len() && d.iter().zip(o).all(|(d, o)| same_number_for_number(d, o))
        }
        (Value::Object(d), Value::Object(o)) => {
            d.len() == o.len() && d.iter().all(|(k, d)| o.get(k).is_some_and(|o| same_number_for_number(d, o)))
        }
        (d, o) => d == o,
    }
}
