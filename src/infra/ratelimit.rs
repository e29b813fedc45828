//! Rate limits shared by every instance: GCRA (the generic cell rate algorithm) in Redis.
//!
//! Each limit key stores one number, its *theoretical arrival time* (TAT) in milliseconds of
//! Redis's clock. A request is admitted when `TAT + T - τ <= now`, where `T = 1000 / rate` is
//! the emission interval and `τ = T × burst` the tolerance; admitting it moves the TAT to
//! `max(TAT, now) + T`. One Lua script checks several keys at once (atomically: either every
//! key admits the request and each is charged, or none is charged), uses Redis's clock so the
//! instances' clocks do not matter, and lets each key expire when its bucket is full again.

use std::time::Duration;

use bb8_redis::redis::Script;

use super::redis::{RedisError, RedisPool};
use crate::config::Limit;

const GCRA: &str = r#"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local n = #KEYS
local new_tats = {}
local retry = 0
local tightest = 1
local remaining = -1
local reset = 0
for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + t
  local allow_at = new_tat - tau
  if allow_at > now then
    if allow_at - now > retry then
      retry = allow_at - now
      tightest = i
    end
  else
    new_tats[i] = new_tat
    local left = math.floor((tau - (new_tat - now)) / t)
    if retry == 0 and (remaining < 0 or left < remaining) then
      remaining = left
      tightest = i
      reset = new_tat - now
    end
  end
end
if retry > 0 then
  return {0, math.ceil(retry), tightest, 0}
end
for i = 1, n do
  redis.call('SET', KEYS[i], new_tats[i], 'PX', math.max(1, math.ceil(new_tats[i] - now)))
end
return {1, math.ceil(reset), tightest, remaining}
"#;

/// A limit to check under a Redis key.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub key: String,
    pub limit: Limit,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admitted; `remaining` more fit in the tightest limit right now.
    Allowed { remaining: u64 },
    /// Refused by `limit`; one more fits after `retry_after`.
    Limited { retry_after: Duration, limit: Limit },
}

pub struct RateLimiter {
    pool: RedisPool,
    script: Script,
    timeout: Duration,
}

impl RateLimiter {
    pub fn new(pool: RedisPool, timeout: Duration) -> Self {
        Self {
            pool,
            script: Script::new(GCRA),
            timeout,
        }
    }

    /// Charges the request to every limit in `checks`, or to none when one refuses it.
    pub async fn check(&self, checks: &[Check]) -> Result<Decision, RedisError> {
        if checks.is_empty() {
            return Ok(Decision::Allowed {
                remaining: u64::MAX,
            });
        }
        let run = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| RedisError::Pool(e.to_string()))?;
            let mut invocation = self.script.prepare_invoke();
            for c in checks {
                let interval = 1_000.0 / c.limit.per_second;
                invocation
                    .key(&c.key)
                    .arg(interval)
                    .arg(interval * f64::from(c.limit.burst));
            }
            let reply: Vec<i64> = invocation.invoke_async(&mut *conn).await?;
            Ok::<_, RedisError>(reply)
        };
        let reply = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| RedisError::Pool(format!("no answer within {:?}", self.timeout)))??;
        let [allowed, millis, tightest, remaining] = reply[..] else {
            return Err(RedisError::Pool(format!(
                "unexpected rate limit reply {reply:?}"
            )));
        };
        let index = usize::try_from(tightest - 1)
            .unwrap_or(0)
            .min(checks.len() - 1);
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: u64::try_from(remaining).unwrap_or(0),
            }
        } else {
            Decision::Limited {
                retry_after: Duration::from_millis(u64::try_from(millis).unwrap_or(0)),
                limit: checks[index].limit,
            }
        })
    }
}
