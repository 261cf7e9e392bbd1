//! Decoding `application/x-www-form-urlencoded` text, the parameters of the query endpoint and
//! of the Argo verdict.

/// Decodes `application/x-www-form-urlencoded` text (a URL's query or a POST body).
pub fn parse_form(text: &str) -> Result<Vec<(String, String)>, String> {
    fn hex(b: Option<u8>) -> Option<u8> {
        char::from(b?).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    fn decode(s: &str) -> Result<String, String> {
        let mut bytes = Vec::with_capacity(s.len());
        let mut it = s.bytes();
        while let Some(b) = it.next() {
            match b {
                b'+' => bytes.push(b' '),
                b'%' => match (hex(it.next()), hex(it.next())) {
                    (Some(hi), Some(lo)) => bytes.push(hi << 4 | lo),
                    _ => return Err(format!("bad percent-encoding in {s:?}")),
                },
                b => bytes.push(b),
            }
        }
        String::from_utf8(bytes).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
    }
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_is_decoded_as_prometheus_clients_send_it() {
        let form = parse_form("query=canary_gate_success_rate%7Bsubset%3D%22canary%22%7D&time=1.5&&x").unwrap();
        assert_eq!(
            form,
            vec![
                ("query".into(), "canary_gate_success_rate{subset=\"canary\"}".into()),
                ("time".into(), "1.5".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(parse_form("query=vector(+1+)").unwrap(), vec![("query".into(), "vector( 1 )".into())]);
        assert!(parse_form("query=%zz").is_err());
        assert!(parse_form("query=%ff").is_err(), "not UTF-8");
    }
}
