//! Bounds on every template render (`render`, chat templates including those that come with
//! downloaded models, judge and translation prompts): a template is code from a file or a
//! model repository, and a loop that never ends or an output that grows without limit must
//! stop with a clear error instead of running until the machine is out of memory.

use minijinja::{Environment, Template};

/// Instructions one render may execute (minijinja's fuel). A long chat (hundreds of turns)
/// through a model's template takes well under a million.
pub const FUEL: u64 = 5_000_000;
/// Bytes one render may write.
pub const MAX_OUTPUT: usize = 16 << 20;

/// Gives `env` the fuel limit; every environment prefflow renders with goes through this.
pub fn bound(env: &mut Environment<'_>) {
    env.set_fuel(Some(FUEL));
}

/// Renders `template` with `ctx`, stopping at [`MAX_OUTPUT`] bytes; errors say which bound was
/// hit.
pub fn render<S: serde::Serialize>(template: &Template<'_, '_>, ctx: S) -> Result<String, String> {
    let mut out = Capped(Vec::new());
    match template.render_captured_to(ctx, &mut out) {
        Ok(_) => String::from_utf8(out.0).map_err(|e| e.to_string()),
        Err(e) => Err(explain(&e)),
    }
}

/// Compiles `source` in `env` and renders it once with `ctx`, bounded.
pub fn render_str<S: serde::Serialize>(
    env: &Environment<'_>,
    source: &str,
    ctx: S,
) -> Result<String, String> {
    let t = env.template_from_str(source).map_err(|e| e.to_string())?;
    render(&t, ctx)
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
        let looping =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render_str(&env, looping, ()).unwrap_err();
        assert!(e.contains("steps"), "{e}");
        let growing = format!(
            "{{% for i in range(50000) %}}{}{{% endfor %}}",
            "x".repeat(1000)
        );
        let e = render_str(&env, &growing, ()).unwrap_err();
        assert!(e.contains("MiB"), "{e}");
        assert_eq!(render_str(&env, "{{ 1 + 1 }}", ()).unwrap(), "2");
    }
}
