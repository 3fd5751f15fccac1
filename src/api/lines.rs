//! Reading newline-delimited lines with a hard size limit: an oversize line is skipped
//! up to its newline (never buffered whole), so one bad client line costs bounded memory
//! and the connection stays usable.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line within the limit (without the newline), in the caller's buffer.
    Complete,
    /// A line over the limit, skipped; `len` bytes were discarded.
    TooLong {
        /// Discarded length.
        len: usize,
    },
    /// The peer closed the stream (a last unterminated line is returned first).
    Eof,
}

/// Reads one line into `buf` (cleared first), refusing lines longer than `max` bytes.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    let mut skipped: Option<usize> = None;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match skipped {
                Some(len) => Line::TooLong { len },
                None if buf.is_empty() => Line::Eof,
                None => Line::Complete,
            });
        }
        let (chunk, found_newline) = match memchr::memchr(b'\n', available) {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        match skipped.as_mut() {
            Some(len) => *len += chunk.len(),
            None if buf.len() + chunk.len() > max => skipped = Some(buf.len() + chunk.len()),
            None => buf.extend_from_slice(chunk),
        }
        let used = found_newline.unwrap_or(available.len());
        reader.consume(used);
        if found_newline.is_some() {
            if let Some(len) = skipped {
                buf.clear();
                return Ok(Line::TooLong { len });
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn limits_and_recovers() {
        let input = b"short\nthis line is far too long\nok\r\nlast".to_vec();
        let mut r = BufReader::with_capacity(4, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut r, 10, &mut buf).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line(&mut r, 10, &mut buf).await.unwrap(),
            Line::TooLong { len: 25 }
        );
        assert_eq!(
            read_line(&mut r, 10, &mut buf).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"ok");
        assert_eq!(
            read_line(&mut r, 10, &mut buf).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, 10, &mut buf).await.unwrap(), Line::Eof);
    }
}
