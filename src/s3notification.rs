//! S3 objects as event data, shared by `kind = "s3"` (polling) and `format =
//! "s3-notification"` (AWS S3 and MinIO event-notification documents on any bridge).
//! Pure parsing, no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The data of an S3 event, the same for polling and notification records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectData {
    pub bucket: String,
    pub key: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The body inline: JSON as JSON, text as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The body inline when it is neither JSON nor text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// ETags come quoted from S3; the quotes are not part of the value.
pub fn clean_etag(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// Puts a small body into `data`: JSON as JSON, UTF-8 text as a string, else base64.
pub fn inline_body(data: &mut ObjectData, body: &[u8]) {
    let ct = data
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    if crate::cloudevent::is_json_content_type(ct)
        && let Ok(value) = serde_json::from_slice::<Value>(body)
    {
        data.body = Some(value);
    } else if (ct.starts_with("text/") || ct.contains("xml"))
        && let Ok(text) = std::str::from_utf8(body)
    {
        data.body = Some(Value::String(text.to_owned()));
    } else {
        use base64::Engine;
        data.body_base64 = Some(base64::engine::general_purpose::STANDARD.encode(body));
    }
}

/// One `Records[]` entry, ready to become a CloudEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `eventName` as sent: `ObjectCreated:Put` (AWS), `s3:ObjectRemoved:Delete` (MinIO).
    pub event_name: String,
    pub time: Option<DateTime<Utc>>,
    /// `<bucket>/<key>@<sequencer>`.
    pub id: String,
    pub data: ObjectData,
}

/// Parses a notification document. `Ok(vec![])` for a document without records that
/// says it is a test event (`"Event": "s3:TestEvent"`, sent when a notification is
/// configured).
pub fn parse(document: &[u8]) -> Result<Vec<Record>, String> {
    let root: Value = serde_json::from_slice(document)
        .map_err(|e| format!("not an S3 notification: not JSON: {e}"))?;
    let Some(records) = root.get("Records") else {
        if root.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
            return Ok(Vec::new());
        }
        return Err("not an S3 notification: no `Records` array".into());
    };
    let records = records
        .as_array()
        .ok_or("not an S3 notification: `Records` is not an array")?;
    records
        .iter()
        .enumerate()
        .map(|(index, record)| parse_record(record).map_err(|e| format!("Records[{index}]: {e}")))
        .collect()
}

fn parse_record(record: &Value) -> Result<Record, String> {
    let text = |pointer: &str| record.pointer(pointer).and_then(Value::as_str);
    let event_name = text("/eventName").ok_or("no `eventName`")?.to_owned();
    let bucket = text("/s3/bucket/name")
        .ok_or("no `s3.bucket.name`")?
        .to_owned();
    let raw_key = text("/s3/object/key").ok_or("no `s3.object.key`")?;
    let key =
        url_decode(raw_key).ok_or_else(|| format!("key `{raw_key}` is not URL-encoded UTF-8"))?;
    let object = record.pointer("/s3/object").expect("has a key");
    let size = object.get("size").and_then(Value::as_i64);
    let etag = object
        .get("eTag")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(clean_etag);
    let version_id = object
        .get("versionId")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let content_type = object
        .get("contentType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let sequencer = object
        .get("sequencer")
        .and_then(Value::as_str)
        .ok_or("no `s3.object.sequencer`")?;
    let time = match text("/eventTime") {
        Some(t) => Some(
            crate::cloudevent::parse_time(t)
                .ok_or_else(|| format!("`eventTime` `{t}` is not RFC 3339"))?,
        ),
        None => None,
    };
    Ok(Record {
        event_name,
        time,
        id: format!("{bucket}/{key}@{sequencer}"),
        data: ObjectData {
            bucket,
            key,
            size,
            etag,
            content_type,
            version_id,
            last_modified: None,
            body: None,
            body_base64: None,
        },
    })
}

/// Keys in notifications are form-encoded: `+` is a space, `%XX` a byte.
pub fn url_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `ObjectCreated:Put` as documented in the AWS S3 user guide (event message
    /// structure, version 2.1), with a key that has a space, a plus and a non-ASCII
    /// character.
    const AWS_PUT: &str = r#"{
      "Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-west-2",
        "eventTime": "1970-01-01T00:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AIDAJDPLRKLG7UEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
          "x-amz-request-id": "C3D13FE58DE4C810",
          "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"
        },
        "s3": {
          "s3SchemaVersion": "1.0",
          "configurationId": "testConfigRule",
          "bucket": {
            "name": "amzn-s3-demo-bucket",
            "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
            "arn": "arn:aws:s3:::amzn-s3-demo-bucket"
          },
          "object": {
            "key": "reports/Q1+summary%2B%C3%A9t%C3%A9.pdf",
            "size": 1024,
            "eTag": "d41d8cd98f00b204e9800998ecf8427e",
            "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
            "sequencer": "0055AED6DCD90281E5"
          }
        }
      }]
    }"#;

    /// A multi-object delete as MinIO sends it (`s3:` event names, `source`, content
    /// type in the object; one record per deleted object).
    const MINIO_DELETES: &str = r#"{
      "EventName": "s3:ObjectRemoved:Delete",
      "Key": "images/a%20b.png",
      "Records": [
        {
          "eventVersion": "2.0",
          "eventSource": "minio:s3",
          "awsRegion": "",
          "eventTime": "2024-05-01T10:00:00.123Z",
          "eventName": "s3:ObjectRemoved:Delete",
          "userIdentity": {"principalId": "minioadmin"},
          "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "172.17.0.1"},
          "responseElements": {"x-amz-request-id": "17C1A2B3C4D5E6F7", "x-minio-origin-endpoint": "http://172.17.0.2:9000"},
          "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": "images", "ownerIdentity": {"principalId": "minioadmin"}, "arn": "arn:aws:s3:::images"},
            "object": {"key": "a%20b.png", "sequencer": "17C1A2B3C4D5E6F8"}
          },
          "source": {"host": "172.17.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"}
        },
        {
          "eventVersion": "2.0",
          "eventSource": "minio:s3",
          "awsRegion": "",
          "eventTime": "2024-05-01T10:00:00.124Z",
          "eventName": "s3:ObjectRemoved:Delete",
          "userIdentity": {"principalId": "minioadmin"},
          "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": "images", "ownerIdentity": {"principalId": "minioadmin"}, "arn": "arn:aws:s3:::images"},
            "object": {"key": "dir%2Fc.png", "sequencer": "17C1A2B3C4D5E6F9", "contentType": "image/png"}
          }
        }
      ]
    }"#;

    #[test]
    fn aws_record_with_an_encoded_key() {
        let records = parse(AWS_PUT.as_bytes()).unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r.event_name, "ObjectCreated:Put");
        assert_eq!(r.data.key, "reports/Q1 summary+été.pdf");
        assert_eq!(r.data.bucket, "amzn-s3-demo-bucket");
        assert_eq!(r.data.size, Some(1024));
        assert_eq!(
            r.data.etag.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            r.data.version_id.as_deref(),
            Some("096fKKXTRTtl3on89fVO.nfljtsv6qko")
        );
        assert_eq!(
            r.id,
            "amzn-s3-demo-bucket/reports/Q1 summary+été.pdf@0055AED6DCD90281E5"
        );
        assert_eq!(r.time.unwrap().timestamp(), 0);
    }

    #[test]
    fn minio_multi_record_delete() {
        let records = parse(MINIO_DELETES.as_bytes()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].event_name, "s3:ObjectRemoved:Delete");
        assert_eq!(records[0].data.key, "a b.png");
        assert_eq!(records[1].data.key, "dir/c.png");
        assert_eq!(records[1].data.content_type.as_deref(), Some("image/png"));
        assert_eq!(records[0].data.size, None);
        assert_ne!(records[0].id, records[1].id);
    }

    #[test]
    fn test_events_have_no_records_and_others_are_refused() {
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-01-01T00:00:00.000Z","Bucket":"b","RequestId":"r","HostId":"h"}"#;
        assert_eq!(parse(test_event.as_bytes()).unwrap(), Vec::new());
        assert!(parse(b"{\"hello\":1}").unwrap_err().contains("Records"));
        assert!(parse(b"not json").is_err());
        assert!(
            parse(br#"{"Records":[{"eventName":"x"}]}"#)
                .unwrap_err()
                .contains("Records[0]")
        );
        assert!(url_decode("%zz").is_none());
        assert!(url_decode("%C3").is_none());
    }
}
