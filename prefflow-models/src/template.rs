//! Bounds on every template render (`render`, chat templates including those that come with
//! downloaded models, judge and translation prompts): a template is code from a file or a
//! model repository, and a loop that never ends or an output that grows without limit must
//! stop with a clear error instead of running until the machine is out of memory. Three bounds
//! hold: steps (minijinja's fuel), bytes written, and bytes allocated by the render
//! ([`super::memory_budget`]: a value doubled in a loop grows with neither many steps nor any
//! output).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::{Environment, Value};

use super::memory_budget::{self, Outcome};

/// Instructions one render may execute (minijinja's fuel). A long chat (hundreds of turns)
/// through a model's template takes well under a million.
pub const FUEL: u64 = 5_000_000;
/// Bytes one render may write.
pub const MAX_OUTPUT: usize = 16 << 20;
/// Bytes one render may hold at once beyond its inputs (values it builds, its output).
pub const MAX_MEMORY: usize = 256 << 20;

/// Templates (by hash of their text) that went over [`MAX_MEMORY`]: each such render leaves
/// its stopped thread's memory behind, so the same template is refused from then on instead of
/// being tried on every row.
static OVER_MEMORY: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
/// Whether [`OVER_MEMORY`] holds any template: until one goes over, a render neither hashes
/// its template nor takes the lock.
static ANY_OVER_MEMORY: AtomicBool = AtomicBool::new(false);

/// Gives `env` the fuel limit; every environment prefflow renders with goes through this.
pub fn bound(env: &mut Environment<'_>) {
    env.set_fuel(Some(FUEL));
}

/// Renders template `name` of `env` with `ctx`, within the three bounds; errors say which
/// bound was hit.
pub fn render(env: &Arc<Environment<'static>>, name: &str, ctx: Value) -> Result<String, String> {
    let template = env.get_template(name).map_err(|e| e.to_string())?;
    let env = env.clone();
    let name = name.to_string();
    bounded(template.source(), move || {
        let t = env.get_template(&name).map_err(|e| e.to_string())?;
        write_capped(|out| t.render_captured_to(ctx, out).map(|_| ()))
    })
}

/// Compiles `source` in `env` and renders it once with `ctx`, within the three bounds.
pub fn render_str(
    env: &Arc<Environment<'static>>,
    source: &str,
    ctx: Value,
) -> Result<String, String> {
    let env = env.clone();
    let text = source.to_string();
    bounded(source, move || {
        let t = env.template_from_str(&text).map_err(|e| e.to_string())?;
        write_capped(|out| t.render_captured_to(ctx, out).map(|_| ()))
    })
}

fn bounded(
    source: &str,
    work: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> Result<String, String> {
    let key = || {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        h.finish()
    };
    let over = || {
        format!(
            "the template held more than {} MiB while rendering (a value that grows in a loop?)",
            MAX_MEMORY >> 20
        )
    };
    let over_memory = || OVER_MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    if ANY_OVER_MEMORY.load(Ordering::Acquire)
        && over_memory()
            .as_ref()
            .is_some_and(|set| set.contains(&key()))
    {
        return Err(over());
    }
    match memory_budget::run(MAX_MEMORY, work) {
        Outcome::Done(result) => result,
        Outcome::OverBudget => {
            over_memory().get_or_insert_with(HashSet::new).insert(key());
            ANY_OVER_MEMORY.store(true, Ordering::Release);
            Err(over())
        }
    }
}

/// Runs a render into a buffer that stops at [`MAX_OUTPUT`] bytes.
fn write_capped(
    render: impl FnOnce(&mut Capped) -> Result<(), minijinja::Error>,
) -> Result<String, String> {
    let mut out = Capped(Vec::new());
    match render(&mut out) {
        Ok(()) => String::from_utf8(out.0).map_err(|e| e.to_string()),
        Err(e) => Err(explain(&e)),
    }
}

/// A template error in words, naming the bound that stopped it.
pub fn explain(e: &minijinja::Error) -> String {
    match e.kind() {
        minijinja::ErrorKind::OutOfFuel => {
            format!("the template did not finish within {FUEL} steps (a loop that does not end?)")
        }
        minijinja::ErrorKind::WriteFailure => format!(
            "the template's output is over {} MiB (a loop that does not end?)",
            MAX_OUTPUT >> 20
        ),
        _ => e.to_string(),
    }
}

struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other("template output over the limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_loops_and_huge_outputs_stop() {
        let mut env = Environment::new();
        bound(&mut env);
        let env = Arc::new(env);
        let looping =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render_str(&env, looping, Value::UNDEFINED).unwrap_err();
        assert!(e.contains("steps"), "{e}");
        let growing = format!(
            "{{% for i in range(50000) %}}{}{{% endfor %}}",
            "x".repeat(1000)
        );
        let e = render_str(&env, &growing, Value::UNDEFINED).unwrap_err();
        assert!(e.contains("MiB"), "{e}");
        assert_eq!(
            render_str(&env, "{{ 1 + 1 }}", Value::UNDEFINED).unwrap(),
            "2"
        );
    }

    #[test]
    fn values_that_grow_without_output_stop() {
        let mut env = Environment::new();
        bound(&mut env);
        let env = Arc::new(env);
        for doubling in [
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
            "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s|replace('x', ns.s) %}{% endfor %}{{ ns.s|length }}",
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}{{ ns.s|length }}",
        ] {
            let e = render_str(&env, doubling, Value::UNDEFINED).unwrap_err();
            assert!(e.contains("256 MiB"), "{doubling}: {e}");
            // Refused at once from then on.
            let again = render_str(&env, doubling, Value::UNDEFINED).unwrap_err();
            assert_eq!(again, e);
        }
        // A template that builds a large value within the budget still renders.
        let big = "{% set ns = namespace(s='x') %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
        assert_eq!(
            render_str(&env, big, Value::UNDEFINED).unwrap(),
            (1 << 20).to_string()
        );
    }
}
